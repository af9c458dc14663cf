"""ChatKit's dictation (`input.transcribe`) through nginx: the audio reaches the model server's
/audio/transcriptions intact, as a multipart form with the configured model, and its text comes
back as the official `openai-chatkit` TranscriptionResult. Bad input is a 4xx JSON answer that
reaches no model."""

import base64
import json

import httpx
import pytest
from chatkit.types import TranscriptionResult

from harness import Stack, hs256_token

# Every byte value, line ends and something that looks like a multipart boundary.
AUDIO = bytes(range(256)) * 40 + b"\r\n--boundary\r\n\r\n" + bytes(100)


@pytest.fixture(scope="module")
def dictation(database_kind):
    started = Stack(extra_env={"OPENAI_TRANSCRIBE_MODEL": "whisper-test"}, database=database_kind)
    yield started
    started.stop()


def post(stack, params=None, raw=None, user="dictating"):
    body = raw if raw is not None else json.dumps({"type": "input.transcribe", "params": params}).encode()
    return httpx.post(f"{stack.base_url}/api/chatkit", content=body, timeout=30,
                      headers={"Authorization": f"Bearer {hs256_token(user)}", "Content-Type": "application/json"})


def transcriptions(stack):
    return [entry for entry in stack.model_requests() if entry.get("endpoint") == "audio/transcriptions"]


@pytest.mark.parametrize("mime_type,media_type,filename", [
    ("audio/webm;codecs=opus", "audio/webm", "audio.webm"),
    ("audio/mp4", "audio/mp4", "audio.mp4"),
    ("audio/ogg; codecs=opus", "audio/ogg", "audio.ogg"),
])
def test_dictated_audio_reaches_the_model_intact_and_its_text_comes_back(dictation, mime_type, media_type, filename):
    before = len(transcriptions(dictation))
    response = post(dictation, {"audio_base64": base64.b64encode(AUDIO).decode(), "mime_type": mime_type})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    result = TranscriptionResult.model_validate_json(response.content)
    assert result.text == f"heard {len(AUDIO)} bytes of {media_type} in {filename}"
    sent = transcriptions(dictation)
    assert len(sent) == before + 1
    assert {key: sent[-1][key] for key in ("model", "filename", "content_type")} == \
        {"model": "whisper-test", "filename": filename, "content_type": media_type}
    assert base64.urlsafe_b64decode(sent[-1]["file"] + "=" * (-len(sent[-1]["file"]) % 4)) == AUDIO


def test_base64_without_its_padding_is_read_too(dictation):
    encoded = base64.b64encode(AUDIO[:1001]).decode().rstrip("=")
    response = post(dictation, {"audio_base64": encoded, "mime_type": "audio/webm"})
    assert response.status_code == 200, response.text
    assert response.json() == {"text": "heard 1001 bytes of audio/webm in audio.webm"}


@pytest.mark.parametrize("params,status", [
    ({"mime_type": "audio/webm"}, 422),
    ({"audio_base64": 5, "mime_type": "audio/webm"}, 422),
    ({"audio_base64": "", "mime_type": "audio/webm"}, 422),
    ({"audio_base64": "%%%%", "mime_type": "audio/webm"}, 422),
    ({"audio_base64": "abcde", "mime_type": "audio/webm"}, 422),
    ({"audio_base64": "====", "mime_type": "audio/webm"}, 422),
    ({"audio_base64": "aGVsbG8=\n", "mime_type": "audio/webm"}, 422),
    ({"audio_base64": "aGVsbG8="}, 422),
    ({"audio_base64": "aGVsbG8=", "mime_type": "video/mp4"}, 422),
    ({"audio_base64": "aGVsbG8=", "mime_type": "text/plain"}, 422),
    ({"audio_base64": "aGVsbG8=", "mime_type": ";codecs=opus"}, 422),
    ({"audio_base64": "A" * 1_500_000, "mime_type": "audio/webm"}, 413),
])
def test_bad_dictation_gets_a_4xx_and_reaches_no_model(dictation, params, status):
    before = len(transcriptions(dictation))
    response = post(dictation, params)
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert len(transcriptions(dictation)) == before


def test_dictation_needs_a_token(dictation):
    response = httpx.post(f"{dictation.base_url}/api/chatkit", timeout=30,
                          content=json.dumps({"type": "input.transcribe", "params": {"audio_base64": "aGVsbG8=", "mime_type": "audio/webm"}}))
    assert response.status_code == 401 and response.json()["detail"]


@pytest.mark.parametrize("failure,status,attempts", [("fail 400", 502, 1), ("fail 503", 502, 3), ("fail 429", 429, 3)])
def test_a_failing_transcription_is_a_json_error_after_the_retries_a_chat_call_gets(dictation, failure, status, attempts):
    before = len(transcriptions(dictation))
    response = post(dictation, {"audio_base64": base64.b64encode(failure.encode()).decode(), "mime_type": "audio/webm"})
    assert response.status_code == status, response.text
    assert response.json()["detail"]
    assert len(transcriptions(dictation)) == before + attempts
