"""`captioner pairs`: short prompts for dense captions, checked, retried, resumable; SFT export; the CLI."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from captioner.backends import OpenAIBackendConfig
from captioner.cli import cli
from captioner.errors import BackendError, CaptionerError, ConfigError
from captioner.pairs import (
    Pair,
    PairsConfig,
    build_request,
    check_prompt,
    default_sft_system,
    export_sft,
    item_id,
    load_pairs,
    load_pairs_prompts,
    mine_pairs,
    read_captions,
    sidecar_paths,
)
from captioner.record import ClipRange, load_record, save_record
from captioner.shards import JsonlAppender

try:
    from chat_server import Action, ChatServer
except ImportError:  # pragma: no cover - when tests/ is not on sys.path
    from tests.chat_server import Action, ChatServer

KEY_ENV = "DENSECAP_TEST_PAIRS_KEY"
GOOD = "A dog chasing a red ball across a sunny garden"
LONG = ("A small brown dog with floppy ears chases a red ball across a sunny garden, jumps a hedge, rolls "
        "in the grass and runs happily back to its waiting owner")  # 30 words


def _completion(text: str) -> dict:
    return {
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "model": "test-llm",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    }


def _say(server: ChatServer, *texts: str) -> None:
    for text in texts:
        server.push(Action(body=_completion(text)))


class CaptionServer(ChatServer):
    """Answers by default with a good short prompt made from the ``[cN]`` marker of the caption."""

    def _reply(self, body):
        data = super()._reply(body)
        users = " ".join(m["content"] for m in body["messages"] if m["role"] == "user")
        found = re.findall(r"\[c(\d+)\]", users)
        data["choices"][0]["message"]["content"] = f"Dog number {found[-1]} chasing a red ball in a garden"
        return data


def _caption(i: int) -> str:
    return f"[c{i}] A brown dog runs after a red ball in a sunny garden. It catches the ball and trots back to the camera."


def _captions_file(folder: Path, n: int, name: str = "captions.jsonl") -> Path:
    path = folder / name
    rows = [{"video": f"clip{i}.mp4", "start": None, "end": None, "caption": _caption(i)} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _cfg(server: ChatServer, **kw) -> PairsConfig:
    writer = OpenAIBackendConfig(
        model="test-llm", base_url=server.base_url, api_key_env=KEY_ENV, max_in_flight=1, max_retries=0, timeout_s=5.0
    )
    return PairsConfig(writer=writer, **kw)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _user_texts(request) -> list[str]:
    return [m["content"] for m in request.body["messages"] if m["role"] == "user"]


@pytest.fixture
def server(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with ChatServer() as s:
        yield s


@pytest.fixture
def caption_server(monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with CaptionServer() as s:
        yield s


# --------------------------------------------------------------------------------- checks, prompts


@pytest.mark.parametrize(
    "answer,text,reason",
    [
        (GOOD, GOOD, None),
        (f'  "{GOOD}"\n', GOOD, None),
        (f"Prompt: {GOOD}", GOOD, None),
        (f'**Short prompt:** "{GOOD}."', GOOD + ".", None),
        (f"Sure! Here is the short prompt for this video:\n\n{GOOD}", GOOD, None),
        (f"“{GOOD}”.", GOOD + ".", None),
        (f"```\n{GOOD}\n```", GOOD, None),
        ("'A dog's ball rolling down a grassy hill'", "A dog's ball rolling down a grassy hill", None),
        ('A sign reading "OPEN" above a shop, then "CLOSED"', 'A sign reading "OPEN" above a shop, then "CLOSED"', None),
        ("Dr. Smith walking a dog through a park", "Dr. Smith walking a dog through a park", None),
        ("", "", "empty"),
        ('Prompt: ""', "", "empty"),
        (f"{GOOD}\nIt has ten words.", None, "2 lines"),
        ("A dog", "A dog", "2 words, fewer than 4"),
        (LONG, LONG, "30 words, more than 20"),
        ("The video shows a dog chasing a ball", None, 'starts with "The video"'),
        ("A video of a dog chasing a ball", None, 'starts with "A video"'),
        ("A dog runs. It catches the red ball.", None, "2 sentences"),
        ("A brown dog runs after a red ball in a sunny garden.", None, "copies the caption's first sentence"),
        ("dog ball garden dog ball garden again", None, "repeats itself"),
        ("A dog\x11 chasing a ball in a garden", None, "unprintable"),
        ("一只小狗在花园里追着红色的球跑", None, "not in English"),
        ("Un chien brun court après une balle rouge dans le jardin de la maison", None, "does not read as English"),
    ],
)
def test_check_prompt(answer, text, reason):
    got, why = check_prompt(answer, caption=_caption(0).split("] ")[1], min_words=4, max_words=20)
    if text is not None:
        assert got == text
    if reason is None:
        assert why is None
    else:
        assert why is not None and reason in why


def test_first_sentence_check_can_be_turned_off():
    caption = "A cat sleeps on a sofa. It wakes up and stretches."
    assert check_prompt("A cat sleeps on a sofa.", caption=caption, reject_first_sentence=False)[1] is None


def test_request_and_prompt_file(tmp_path):
    prompts = load_pairs_prompts()
    assert prompts["version"] == "pairs-v1"
    msgs = build_request("  A cat naps on a windowsill.  ", prompts, min_words=3, max_words=12)
    assert [m.role for m in msgs] == ["system"] + ["user", "assistant"] * len(prompts["pairs"]["examples"]) + ["user"]
    assert 2 <= len(prompts["pairs"]["examples"]) <= 3
    assert "3 to 12 words" in msgs[0].text and "The video shows" in msgs[0].text
    assert "A cat naps on a windowsill.\n" in msgs[-1].text
    for ex in prompts["pairs"]["examples"]:  # the few-shot answers pass the checks themselves
        assert check_prompt(ex["prompt"], caption=ex["caption"])[1] is None
    sft = default_sft_system()
    assert "short prompt" in sft and "English" in sft and "verbatim" in sft and "camera" in sft

    bad = tmp_path / "bad.yaml"
    text = (Path(prompts["_path"])).read_text()
    bad.write_text(text.replace("{caption}", "the caption"))
    with pytest.raises(ConfigError, match=r"bad\.yaml: pairs\.user must contain \{caption\}"):
        load_pairs_prompts(str(bad))
    bad.write_text(text.replace("      prompt: A golden retriever", "      promt: A golden retriever"))
    with pytest.raises(ConfigError, match=r"pairs\.examples\[0\]"):
        load_pairs_prompts(str(bad))
    with pytest.raises(ValueError, match="min_words"):
        PairsConfig(min_words=10, max_words=5)


# ------------------------------------------------------------------------------- scripted answers


def test_good_answer_with_quotes_and_label_is_cleaned(server, tmp_path):
    captions = _captions_file(tmp_path, 1)
    out = tmp_path / "out" / "pairs.jsonl"
    _say(server, f'Prompt: "{GOOD}"')
    result = mine_pairs(captions, out, _cfg(server))
    assert (result.new, result.failed, result.read) == (1, 0, 1)
    (line,) = _lines(out)
    video = str((tmp_path / "clip0.mp4").resolve())
    assert line["id"] == item_id(_caption(0), video, None, None)
    assert line["prompt"] == GOOD and line["caption"] == _caption(0)
    assert line["source"] == {"video": video, "start": None, "end": None}
    assert line["attempts"] == 1
    assert line["model"]["backend"] == "openai" and line["model"]["model"] == "test-llm"
    (req,) = server.requests
    roles = [m["role"] for m in req.body["messages"]]
    assert roles[0] == "system" and roles[-1] == "user" and roles.count("assistant") == 3
    assert _caption(0) in req.body["messages"][-1]["content"]
    assert req.body["temperature"] == 0.0 and req.body["seed"] == 0 and req.body["max_tokens"] == 64
    assert result.usage == {"requests": 1, "prompt_tokens": 10, "completion_tokens": 5}
    meta_path, errors_path = sidecar_paths(out)
    assert result.meta == meta_path == tmp_path / "out" / "pairs.meta.json" and not errors_path.exists()
    meta = json.loads(meta_path.read_text())
    assert meta["settings"]["writer_model"] == "test-llm" and meta["settings"]["prompts"] == "pairs-v1"
    assert (meta["settings"]["min_words"], meta["settings"]["max_words"]) == (4, 20)


def test_too_long_answer_is_asked_again_with_the_reason(server, tmp_path):
    out = tmp_path / "pairs.jsonl"
    _say(server, LONG, GOOD)
    result = mine_pairs(_captions_file(tmp_path, 1), out, _cfg(server))
    assert (result.new, result.failed, result.answers) == (1, 0, 2)
    assert _lines(out)[0]["attempts"] == 2 and _lines(out)[0]["prompt"] == GOOD
    first, second = server.requests
    n = len(first.body["messages"])
    assert second.body["messages"][:n] == first.body["messages"]
    assert second.body["messages"][n] == {"role": "assistant", "content": LONG}
    retry = second.body["messages"][n + 1]
    assert retry["role"] == "user" and "30 words, more than 20" in retry["content"] and "4 to 20 words" in retry["content"]


def test_always_bad_goes_to_errors_and_is_not_retried_unless_asked(server, tmp_path):
    captions = _captions_file(tmp_path, 1)
    out = tmp_path / "pairs.jsonl"
    _say(server, LONG, "A dog", "The video shows a dog in a garden")
    result = mine_pairs(captions, out, _cfg(server, max_retries=2))
    assert (result.new, result.failed, result.answers) == (0, 1, 3)
    assert out.exists() and out.read_text() == ""
    (err,) = _lines(sidecar_paths(out)[1])
    assert err["id"] == item_id(_caption(0), str((tmp_path / "clip0.mp4").resolve()))
    assert err["attempts"] == 3 and 'starts with "The video"' in err["reason"]
    assert len(err["reasons"]) == 3 and "more than 20" in err["reasons"][0]
    assert err["last_answer"] == "The video shows a dog in a garden" and err["where"].endswith("captions.jsonl:1")

    again = mine_pairs(captions, out, _cfg(server, max_retries=2))
    assert (again.failed_before, again.new, again.failed) == (1, 0, 0) and len(server.requests) == 3
    _say(server, GOOD)
    retried = mine_pairs(captions, out, _cfg(server, max_retries=2, retry_failed=True))
    assert (retried.new, retried.failed_before) == (1, 0) and _lines(out)[0]["prompt"] == GOOD
    assert mine_pairs(captions, out, _cfg(server, max_retries=2)).done_before == 1


# ------------------------------------------------------------------------------------------ resume


def test_second_run_makes_no_requests(caption_server, tmp_path):
    captions = _captions_file(tmp_path, 5)
    out = tmp_path / "pairs.jsonl"
    seen = []
    first = mine_pairs(captions, out, _cfg(caption_server, batch_size=2), progress=lambda i, n: seen.append((i, n)))
    assert first.new == 5 and seen == [(i, 5) for i in range(1, 6)]
    assert [p["prompt"] for p in _lines(out)] == [f"Dog number {i} chasing a red ball in a garden" for i in range(5)]
    before = out.read_bytes()
    second = mine_pairs(captions, out, _cfg(caption_server, batch_size=2))
    assert (second.new, second.done_before, second.total_pairs) == (0, 5, 5)
    assert len(caption_server.requests) == 5 and out.read_bytes() == before
    assert second.usage == {}  # no model was built


def test_interrupted_run_completes_without_redoing_finished_ids(caption_server, tmp_path):
    captions = _captions_file(tmp_path, 5)
    out = tmp_path / "pairs.jsonl"
    cfg = _cfg(caption_server, batch_size=1)
    caption_server.push(Action())  # two normal answers, then the server fails
    caption_server.push(Action())
    caption_server.fail_next(1, status=400, text="model crashed")
    with pytest.raises(BackendError, match="2 new pairs were written.*run the same command again"):
        mine_pairs(captions, out, cfg)
    assert [p["prompt"].split()[2] for p in _lines(out)] == ["0", "1"]

    limited = mine_pairs(captions, out, cfg, limit=1)
    assert (limited.new, limited.done_before, limited.left) == (1, 2, 2)
    done = mine_pairs(captions, out, cfg)
    assert (done.new, done.done_before, done.left) == (2, 3, 0)
    asked = [re.findall(r"\[c(\d)\]", _user_texts(r)[-1])[0] for r in caption_server.requests]
    assert asked == ["0", "1", "2", "2", "3", "4"]  # c2 again only because its request failed
    ids = [p["id"] for p in _lines(out)]
    assert len(ids) == len(set(ids)) == 5


def test_torn_last_line_is_repaired_and_redone(caption_server, tmp_path):
    captions = _captions_file(tmp_path, 3)
    out = tmp_path / "pairs.jsonl"
    cfg = _cfg(caption_server)
    mine_pairs(captions, out, cfg)
    lines = out.read_bytes().splitlines(keepends=True)
    out.write_bytes(b"".join(lines[:2]) + lines[2][:25])  # a writer killed in mid-line
    assert len(load_pairs(out)) == 2  # readers skip the unfinished line
    result = mine_pairs(captions, out, cfg)
    assert (result.new, result.done_before) == (1, 2) and len(caption_server.requests) == 4
    assert out.read_bytes() == b"".join(lines)


def test_changed_settings_are_refused_by_name(caption_server, tmp_path):
    captions = _captions_file(tmp_path, 2)
    out = tmp_path / "pairs.jsonl"
    mine_pairs(captions, out, _cfg(caption_server))
    with pytest.raises(ConfigError, match=r"changed: max_words: 20 -> 12\)"):
        mine_pairs(captions, out, _cfg(caption_server, max_words=12))
    other = _cfg(caption_server)
    other.writer = other.writer.model_copy(update={"model": "other-llm"})
    with pytest.raises(ConfigError, match=r"writer_model: 'test-llm' -> 'other-llm'"):
        mine_pairs(captions, out, other)
    # batch size, retries and the server are not part of the settings
    assert mine_pairs(captions, out, _cfg(caption_server, batch_size=7, max_retries=5)).done_before == 2
    # a file with pairs but no meta is refused too
    meta, _ = sidecar_paths(out)
    meta.unlink()
    with pytest.raises(CaptionerError, match="has no pairs.meta.json"):
        mine_pairs(captions, out, _cfg(caption_server))
    # an empty pairs file takes the new settings
    fresh = tmp_path / "fresh.jsonl"
    with pytest.raises(BackendError):
        mine_pairs(captions, fresh, _cfg(caption_server).model_copy(update={"writer": other.writer.model_copy(update={"base_url": "http://127.0.0.1:9/v1"})}))
    assert mine_pairs(captions, fresh, _cfg(caption_server, max_words=12)).new == 2


# ------------------------------------------------------------------------------------------- input


def _record(samples_dir: Path, video: str, clip: tuple[float, float] | None, summary: str):
    rec = load_record(samples_dir / "cockatoo.diffsw.json")
    return rec.model_copy(
        update={
            "video": rec.video.model_copy(update={"path": video}),
            "clip": None if clip is None else ClipRange(start=clip[0], end=clip[1]),
            "summary": summary,
        }
    )


def test_inputs_from_a_run_folder_and_a_record(samples_dir, tmp_path):
    folder = tmp_path / "run"
    recs = [
        _record(samples_dir, "/data/a.mp4", (0.0, 14.0), "A white bird on a perch."),
        _record(samples_dir, "/data/a.mp4", (14.0, 28.0), "The bird raises its crest."),
        _record(samples_dir, "/data/b.mp4", None, "   "),
        _record(samples_dir, "/data/a.mp4", (0.0, 14.0), "A white bird on a perch."),  # the same again
    ]
    with JsonlAppender(folder / "records" / "part-0001.jsonl") as app:
        for r in recs:
            app.append(r.model_dump(mode="json"))
    got = read_captions(folder)
    assert (got.read, got.empty, got.duplicates, len(got.items)) == (4, 1, 1, 2)
    a, b = got.items
    assert a.source == {"video": "/data/a.mp4", "start": 0.0, "end": 14.0} and a.caption == "A white bird on a perch."
    assert b.source["start"] == 14.0 and a.id != b.id and a.id == item_id(a.caption, "/data/a.mp4", 0.0, 14.0)
    assert a.where.endswith("part-0001.jsonl:1")
    assert [i.id for i in read_captions(folder / "records" / "part-0001.jsonl").items] == [a.id, b.id]
    save_record(recs[0], tmp_path / "rec.json")
    (one,) = read_captions(tmp_path / "rec.json").items
    assert one.id == a.id


def test_inputs_from_export_files(tmp_path):
    data = tmp_path / "dataset"
    data.mkdir()
    rows = [
        {"video": "/abs/v1.mp4", "start": 1.5, "end": 4.0, "caption": "A red kite flies over a beach."},
        {"video": "v2.mp4", "start": None, "end": None, "caption": ""},
        {"video": "v3.mp4", "caption": "Waves roll onto the sand."},
    ]
    (data / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = read_captions(data)  # a dataset folder: its captions.jsonl
    assert (got.read, got.empty) == (3, 1)
    assert [i.source for i in got.items] == [
        {"video": "/abs/v1.mp4", "start": 1.5, "end": 4.0},
        {"video": str(data / "v3.mp4"), "start": None, "end": None},
    ]
    with (data / "metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file_name", "caption", "start", "end"])
        w.writerow(["videos/v1.mp4", "A red kite flies over a beach.\nIt dips and climbs.", "1.5", "4.0"])
        w.writerow(["videos/v2.mp4", "", "", ""])
    got = read_captions(data / "metadata.csv")
    (item,) = got.items
    assert got.empty == 1 and item.caption == "A red kite flies over a beach.\nIt dips and climbs."
    assert item.source == {"video": str(data / "videos" / "v1.mp4"), "start": 1.5, "end": 4.0}
    (data / "metadata.jsonl").write_text(json.dumps({"file_name": "videos/v1.mp4", "caption": "Kite.", "start": None, "end": None}) + "\n")
    assert read_captions(data / "metadata.jsonl").items[0].source["video"] == str(data / "videos" / "v1.mp4")
    (tmp_path / "plain.jsonl").write_text(json.dumps({"caption": "Only text."}))  # no final newline, no video
    (plain,) = read_captions(tmp_path / "plain.jsonl").items
    assert plain.source is None and plain.id == item_id("Only text.")


def test_input_errors_name_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"caption": "ok"}\n{"caption": \n')
    with pytest.raises(CaptionerError, match=r"bad\.jsonl:2: not valid JSON"):
        read_captions(bad)
    bad.write_text('{"caption": "ok"}\n{"text": "no caption"}\n')
    with pytest.raises(CaptionerError, match=r"bad\.jsonl:2: no 'caption' key \(keys: text\)"):
        read_captions(bad)
    bad.write_text('{"caption": "ok", "start": "soon"}\n')
    with pytest.raises(CaptionerError, match=r"bad\.jsonl:1: start must be a number"):
        read_captions(bad)
    bad.write_text('{"caption": 3}\n')
    with pytest.raises(CaptionerError, match=r"bad\.jsonl:1: caption must be a string"):
        read_captions(bad)
    table = tmp_path / "meta.csv"
    table.write_text("file_name,text\na.mp4,hello\n")
    with pytest.raises(CaptionerError, match=r"meta\.csv: no 'caption' column \(columns: file_name, text\)"):
        read_captions(table)
    with pytest.raises(CaptionerError, match="no such file or folder"):
        read_captions(tmp_path / "missing.jsonl")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CaptionerError, match="unknown caption file type .txt"):
        read_captions(tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CaptionerError, match="neither a `captioner run` folder"):
        read_captions(tmp_path / "empty")


# ------------------------------------------------------------------------------ load_pairs, SFT


def test_load_pairs_and_its_errors(samples_dir, tmp_path):
    shipped = load_pairs(samples_dir / "pairs.jsonl")
    assert 6 <= len(shipped) <= 10 and all(isinstance(p, Pair) and p.source is None for p in shipped)
    for p in shipped:
        assert check_prompt(p.prompt, caption=p.caption)[1] is None
        assert len(p.caption.split()) > 3 * len(p.prompt.split()) and p.id == item_id(p.caption)
    assert len({p.id for p in shipped}) == len(shipped)

    path = tmp_path / "pairs.jsonl"
    with pytest.raises(CaptionerError, match=r"pairs\.jsonl: pairs file not found"):
        load_pairs(path)
    good = {"id": "a", "prompt": "A dog runs on a beach", "caption": "A long caption.", "source": None}
    path.write_text(json.dumps(good) + "\n{oops\n")
    with pytest.raises(CaptionerError, match=r"pairs\.jsonl:2: not valid JSON"):
        load_pairs(path)
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({"id": "b", "caption": "x"}) + "\n")
    with pytest.raises(CaptionerError, match=r"pairs\.jsonl:3: missing key 'prompt'"):
        load_pairs(path)
    path.write_text(json.dumps({**good, "prompt": " "}) + "\n")
    with pytest.raises(CaptionerError, match=r":1: 'prompt' must be a non-empty string"):
        load_pairs(path)
    path.write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    with pytest.raises(CaptionerError, match=r":2: duplicate id 'a' \(first on line 1\)"):
        load_pairs(path)
    path.write_text(json.dumps(good))  # hand-written, no final newline: still read
    assert load_pairs(path) == [Pair("a", good["prompt"], good["caption"], None)]


def test_export_sft_chat_and_sharegpt(tmp_path):
    pairs = [Pair("a", "A dog on a beach", "A golden dog runs along the sand. The camera tracks it."), Pair("b", "A cat", "A cat sleeps.")]
    chat = export_sft(pairs, tmp_path / "sft.jsonl", "SYSTEM TEXT")
    rows = _lines(chat)
    assert rows[0] == {
        "messages": [
            {"role": "system", "content": "SYSTEM TEXT"},
            {"role": "user", "content": "A dog on a beach"},
            {"role": "assistant", "content": "A golden dog runs along the sand. The camera tracks it."},
        ]
    }
    assert len(rows) == 2
    share = _lines(export_sft(pairs, tmp_path / "sg.jsonl", "SYSTEM TEXT", format="sharegpt"))
    assert share[1] == {
        "conversations": [
            {"from": "system", "value": "SYSTEM TEXT"},
            {"from": "human", "value": "A cat"},
            {"from": "gpt", "value": "A cat sleeps."},
        ]
    }
    assert [m["role"] for m in _lines(export_sft(pairs, tmp_path / "n.jsonl", ""))[0]["messages"]] == ["user", "assistant"]
    assert _lines(export_sft(pairs, tmp_path / "d.jsonl"))[0]["messages"][0]["content"] == default_sft_system()
    with pytest.raises(CaptionerError, match="unknown SFT format"):
        export_sft(pairs, tmp_path / "x.jsonl", format="alpaca")
    with pytest.raises(CaptionerError, match="no pairs"):
        export_sft([], tmp_path / "x.jsonl")


# --------------------------------------------------------------------------------------------- CLI


def _cli_args(server: ChatServer, captions: Path, out: Path, *extra: str) -> list[str]:
    return [
        "pairs", str(captions), "--out", str(out), "--config", "openai", "--no-progress",
        "--set", f"writer.base_url={server.base_url}", "--set", "writer.model=test-llm",
        "--set", f"writer.api_key_env={KEY_ENV}", "--set", "writer.max_retries=0", "--set", "writer.max_in_flight=2",
        *extra,
    ]


def test_cli(caption_server, tmp_path):
    captions = _captions_file(tmp_path, 3)
    (tmp_path / "captions.jsonl").write_text((tmp_path / "captions.jsonl").read_text() + json.dumps({"caption": ""}) + "\n")
    out, sft = tmp_path / "pairs.jsonl", tmp_path / "sft.jsonl"
    runner = CliRunner()
    result = runner.invoke(cli, _cli_args(caption_server, captions, out, "--sft", str(sft), "--sft-format", "sharegpt"))
    assert result.exit_code == 0, result.output
    assert "4 captions: 3 new pairs, 0 skipped as done, 0 failed, 1 empty" in result.output
    # the usage line adds up what the server reported for each request
    prompt_tokens = sum(caption_server._prompt_tokens(r.body) for r in caption_server.requests)
    assert prompt_tokens > 3 * 20
    assert f"writer: 3 requests, {prompt_tokens} prompt tokens, 3 generated tokens" in result.output
    assert f"wrote {out} (3 pairs in all)" in result.output and f"wrote {sft} (3 sharegpt examples)" in result.output
    assert [r["conversations"][1]["value"] for r in _lines(sft)] == [p["prompt"] for p in _lines(out)]

    # every answer refused: exit 2, also on the rerun that skips the failed caption
    more = _captions_file(tmp_path, 4, name="more.jsonl")
    caption_server.push(Action(body=_completion(LONG)))
    result = runner.invoke(cli, _cli_args(caption_server, more, out, "--set", "max_retries=0"))
    assert result.exit_code == 2, result.output
    assert "4 captions: 0 new pairs, 3 skipped as done, 1 failed, 0 empty" in result.output
    assert "have no pair" in result.output and "pairs.errors.jsonl" in result.output
    result = runner.invoke(cli, _cli_args(caption_server, more, out, "--set", "max_retries=0"))
    assert result.exit_code == 2 and "skipped as failed before" in result.output

    # errors the user can fix: exit 1, one line naming the file
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{not json}\n")
    result = runner.invoke(cli, _cli_args(caption_server, bad, tmp_path / "p2.jsonl"))
    assert result.exit_code == 1 and f"error: {bad}:1: not valid JSON" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, _cli_args(caption_server, captions, out, "--set", "min_words=2"))
    assert result.exit_code == 1 and "changed: min_words: 4 -> 2" in result.output
    result = runner.invoke(cli, _cli_args(caption_server, captions, out, "--set", "min_words=30"))
    assert result.exit_code == 1 and "min_words (30) must not exceed max_words (20)" in result.output


# ----------------------------------------------------------------------------- tiny local model


@pytest.mark.usefixtures("one_torch_thread")
def test_tiny_hf_writer_is_deterministic(tiny_models, tmp_path):
    from captioner.clitools import resolve_config
    from captioner.configbase import load_config

    captions = _captions_file(tmp_path, 2)
    cfg = load_config(PairsConfig, resolve_config("pairs", "tiny"), ["max_new_tokens=12", "max_retries=1"])
    files = []
    for run in ("a", "b"):  # two fresh runs, each loading the model anew
        out = tmp_path / run / "pairs.jsonl"
        result = mine_pairs(captions, out, cfg)
        assert result.new + result.failed == 2 and result.answers >= 2
        files.append([out.read_bytes(), sidecar_paths(out)[1].read_bytes() if result.failed else b""])
        assert json.loads(sidecar_paths(out)[0].read_text())["settings"]["writer_model"] == "tiny://llm"
    assert files[0] == files[1]
    assert any(files[0])  # something was written
