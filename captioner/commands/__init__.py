"""CLI commands that live in their own modules. Each module defines ``command`` (a click command);
``captioner.cli`` adds every module found here to the ``captioner`` group."""
