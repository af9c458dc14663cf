"""ChatKit attachments through nginx: two-phase and direct uploads, signed previews, files in a
message reaching the model as the exact data URLs (and again on later turns), `/api/chat`'s
image and file parts. Every reply and event is validated with the official `openai-chatkit`
models. Bad input is a 4xx JSON answer that stores nothing and reaches no model."""

import base64
import hashlib
import hmac
import json
import time
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from chatkit.types import Attachment, Page, Thread, ThreadItem, ThreadStreamEvent
from pydantic import TypeAdapter

from harness import SECRET, Stack, hs256_token, sse_payloads

ATTACHMENT = TypeAdapter(Attachment)
EVENT = TypeAdapter(ThreadStreamEvent)
THREAD = TypeAdapter(Thread)
ITEMS = TypeAdapter(Page[ThreadItem])

# Real magic numbers, then every byte value and line ends that look like a form's delimiter.
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8 + b"\r\n--boundary\r\n\r\n"
JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 3
PDF = b"%PDF-1.7\n" + bytes(range(256)) * 4 + b"%%EOF\n"
TEXT = "Grocery list ✓\n- milk\n- \"eggs\" & <bread>\n".encode()
PER_MESSAGE = 3
USER_MAX_BYTES = 4_000_000
MAX_BYTES = 10 << 20  # the default, which nginx's upload location is sized for


@pytest.fixture(scope="module")
def kit(database_kind):
    started = Stack(database=database_kind, extra_env={
        "CHATKIT_ATTACHMENTS_PER_MESSAGE": str(PER_MESSAGE),
        "CHATKIT_ATTACHMENT_USER_MAX_BYTES": str(USER_MAX_BYTES),
    })
    yield started
    started.stop()


class Session:
    def __init__(self, stack, user):
        self.stack = stack
        self.user = user
        self.http = httpx.Client(base_url=stack.base_url, timeout=60,
                                 headers={"Authorization": f"Bearer {hs256_token(user)}"})

    def post(self, type_, params):
        return self.http.post("/api/chatkit", content=json.dumps({"type": type_, "params": params}),
                              headers={"Content-Type": "application/json"})

    def create(self, name, data, mime_type):
        response = self.post("attachments.create", {"name": name, "size": len(data), "mime_type": mime_type})
        assert response.status_code == 200, response.text
        return response.json()

    def upload(self, name, data, mime_type, form=False, method="PUT"):
        """Two phases, the second without the app's token (a plain fetch)."""
        created = self.create(name, data, mime_type)
        descriptor = created["upload_descriptor"]
        if form:
            response = httpx.request(method, descriptor["url"], files={"file": (name, data, mime_type)}, timeout=60)
        else:
            response = httpx.request(descriptor["method"], descriptor["url"], content=data, timeout=60,
                                     headers={"Content-Type": mime_type, **descriptor["headers"]})
        assert response.status_code == 200, response.text
        return response.json()

    def direct(self, name, data, mime_type):
        return self.http.post("/api/chatkit/attachments", files={"file": (name, data, mime_type)})

    def stream(self, type_, params):
        response = self.post(type_, params)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"].startswith("text/event-stream")
        return [EVENT.validate_python(payload) for payload in sse_payloads(response.text)]


def user_input(text, attachments):
    return {"content": [{"type": "input_text", "text": text}], "attachments": attachments, "inference_options": {}}


def chat_requests(stack):
    return [entry for entry in stack.model_requests() if "messages" in entry]


def last_user_content(request):
    return [message for message in request["messages"] if message["role"] == "user"][-1]["content"]


def data_url(mime_type, data):
    return f"data:{mime_type};base64,{base64.b64encode(data).decode()}"


def answer_text(events):
    done = [event.item for event in events if event.type == "thread.item.done" and event.item.type == "assistant_message"]
    return done[-1].content[0].text


def attachment_count(stack):
    return stack.row_counts()["attachments"]


def signed(url_key_user, attachment_id, purpose, expires):
    """A URL signature as the server makes it, with the key it derives from the auth secret."""
    key = hmac.new(SECRET.encode(), b"chatkit attachment URLs", hashlib.sha256).digest()
    message = "".join(f"{len(part.encode())}:{part}" for part in (purpose, attachment_id, url_key_user, str(expires)))
    return base64.urlsafe_b64encode(hmac.new(key, message.encode(), hashlib.sha256).digest()).decode().rstrip("=")


def test_a_two_phase_image_reaches_the_model_and_its_preview_the_browser(kit):
    alice = Session(kit, "atc-alice")
    created = alice.create("photo.png", PNG, "image/png")
    attachment = ATTACHMENT.validate_python(created)
    assert attachment.type == "image" and attachment.upload_descriptor.method == "PUT"
    assert created["id"].startswith("atc_") and created["name"] == "photo.png" and created["mime_type"] == "image/png"
    assert urlsplit(created["upload_descriptor"]["url"]).path == f"/api/chatkit/attachments/{created['id']}/upload"

    # The upload and the preview carry no token: the signed URL is the credential.
    uploaded = httpx.put(created["upload_descriptor"]["url"], content=PNG, headers={"Content-Type": "image/png"}, timeout=30)
    assert uploaded.status_code == 200, uploaded.text
    stored = ATTACHMENT.validate_json(uploaded.content)
    assert stored.upload_descriptor is None and "upload_descriptor" not in uploaded.json()
    preview = httpx.get(uploaded.json()["preview_url"], timeout=30)
    assert preview.status_code == 200 and preview.content == PNG
    assert preview.headers["content-type"] == "image/png" and preview.headers["x-content-type-options"] == "nosniff"

    before = len(chat_requests(kit))
    events = alice.stream("threads.create", {"input": user_input("what is this", [created["id"]])})
    thread_id = events[0].thread.id
    sent = [event.item for event in events if event.type == "thread.item.done" and event.item.type == "user_message"][0]
    assert [(a.id, a.type, a.name, a.mime_type, a.thread_id) for a in sent.attachments] == \
        [(created["id"], "image", "photo.png", "image/png", thread_id)]
    assert answer_text(events) == f"You said: what is this Attachments: image image/png {len(PNG)} bytes."
    requests = chat_requests(kit)[before:]
    assert last_user_content(requests[0]) == [
        {"type": "text", "text": "what is this"},
        {"type": "image_url", "image_url": {"url": data_url("image/png", PNG)}},
    ]

    # The thread shows the attachment again, with a fresh preview URL that works.
    thread = THREAD.validate_json(alice.post("threads.get_by_id", {"thread_id": thread_id}).content)
    shown = [item for item in thread.items.data if item.type == "user_message"][0].attachments[0]
    assert shown.id == created["id"] and httpx.get(str(shown.preview_url), timeout=30).content == PNG


def test_files_of_every_kind_reach_the_model_and_come_back_on_later_turns(kit):
    alice = Session(kit, "atc-kinds")
    pdf = alice.upload("report.pdf", PDF, "application/pdf", form=True, method="POST")
    assert ATTACHMENT.validate_python(pdf).type == "file" and "preview_url" not in pdf
    notes = alice.direct("notes.txt", TEXT, "text/plain")
    assert notes.status_code == 200, notes.text
    notes = notes.json()
    assert ATTACHMENT.validate_python(notes).type == "file" and "upload_descriptor" not in notes
    image = alice.upload("scan.jpg", JPEG, "image/jpeg", form=True)

    before = len(chat_requests(kit))
    events = alice.stream("threads.create", {"input": user_input("", [pdf["id"], notes["id"], image["id"]])})
    thread_id = events[0].thread.id
    assert answer_text(events) == (f"You said:  Attachments: file report.pdf application/pdf {len(PDF)} bytes; "
                                   f"text notes.txt text/plain {len(TEXT)} bytes; image image/jpeg {len(JPEG)} bytes.")
    title = [event.thread.title for event in events if event.type == "thread.updated"]
    assert title == ["report.pdf"], "a message of files alone is named after the first"
    expected_parts = [
        {"type": "file", "file": {"filename": "report.pdf", "file_data": data_url("application/pdf", PDF)}},
        {"type": "text", "text": "[Attached file notes.txt (text/plain)]\n" + TEXT.decode()},
        {"type": "image_url", "image_url": {"url": data_url("image/jpeg", JPEG)}},
    ]
    assert last_user_content(chat_requests(kit)[before]) == expected_parts

    # The next turn replays the first message with its files, exactly.
    events = alice.stream("threads.add_user_message", {"thread_id": thread_id, "input": user_input("attachments", [])})
    assert answer_text(events).startswith("I received 3 attachments: file report.pdf")
    replayed = [m for m in chat_requests(kit)[-1]["messages"] if m["role"] == "user"]
    assert replayed[0]["content"] == expected_parts and replayed[1]["content"] == "attachments"

    # Items list them on every read; deleting the thread deletes them.
    items = ITEMS.validate_json(alice.post("items.list", {"thread_id": thread_id, "order": "asc"}).content)
    assert [a.id for a in items.data[0].attachments] == [pdf["id"], notes["id"], image["id"]]
    preview = str(items.data[0].attachments[2].preview_url)
    assert httpx.get(preview, timeout=30).status_code == 200
    assert alice.post("threads.delete", {"thread_id": thread_id}).status_code == 200
    assert httpx.get(preview, timeout=30).status_code == 403
    assert alice.post("attachments.delete", {"attachment_id": pdf["id"]}).status_code == 404


def test_api_chat_takes_image_and_file_parts_and_keeps_them_for_the_next_turn(kit):
    headers = {"Authorization": f"Bearer {hs256_token('atc-chat')}"}
    content = [
        {"type": "text", "text": "compare"},
        {"type": "image_url", "image_url": {"url": data_url("image/png", PNG)}},
        {"type": "file", "file": {"filename": "report.pdf", "file_data": data_url("application/pdf", PDF)}},
    ]
    before = len(chat_requests(kit))
    response = httpx.post(f"{kit.base_url}/api/chat", json={"messages": [{"role": "user", "content": content}]},
                          headers=headers, timeout=30)
    assert response.status_code == 200, response.text
    records = sse_payloads(response.text)
    text = "".join(r["choices"][0]["delta"].get("content") or "" for r in records if isinstance(r, dict) and r.get("choices"))
    assert text == f"You said: compare Attachments: image image/png {len(PNG)} bytes; file report.pdf application/pdf {len(PDF)} bytes."
    assert last_user_content(chat_requests(kit)[before]) == content
    conversation = records[0]["conversation_id"]
    again = httpx.post(f"{kit.base_url}/api/chat", headers=headers, timeout=30,
                       json={"conversation_id": conversation, "messages": [{"role": "user", "content": "attachments"}]})
    assert again.status_code == 200
    assert [m for m in chat_requests(kit)[-1]["messages"] if m["role"] == "user"][0]["content"] == content


def test_the_upload_url_takes_bytes_once_and_only_as_declared(kit):
    alice = Session(kit, "atc-once")
    created = alice.create("a.png", PNG, "image/png")
    url = created["upload_descriptor"]["url"]
    stored = attachment_count(kit)
    for body, status in [(PNG[:-1], 400), (PNG + b"x", 400), (JPEG + bytes(len(PNG) - len(JPEG)), 400)]:
        response = httpx.put(url, content=body, timeout=30)
        assert response.status_code == status and response.json()["detail"], response.text
    assert httpx.put(url, content=PNG, timeout=30).status_code == 200
    twice = httpx.put(url, content=PNG, timeout=30)
    assert twice.status_code == 409 and twice.json()["detail"]
    assert attachment_count(kit) == stored


def test_signed_urls_hold_for_their_attachment_purpose_and_time_only(kit):
    alice = Session(kit, "atc-signed")
    created = alice.create("a.png", PNG, "image/png")
    upload = urlsplit(created["upload_descriptor"]["url"])
    query = parse_qs(upload.query)
    base = f"{kit.base_url}{upload.path}"
    expires, signature = int(query["expires"][0]), query["signature"][0]
    tampered = signature[:-2] + ("AA" if not signature.endswith("AA") else "BB")
    past = int(time.time()) - 5
    cases = [
        (base, {"expires": expires, "signature": tampered}),
        (base, {"expires": expires + 1, "signature": signature}),
        (base, {"expires": expires}),
        (base, {"signature": signature}),
        # Validly signed, but expired; or signed for someone else, or for the preview.
        (base, {"expires": past, "signature": signed("atc-signed", created["id"], "upload", past)}),
        (base, {"expires": expires, "signature": signed("atc-bob", created["id"], "upload", expires)}),
        (base, {"expires": expires, "signature": signed("atc-signed", created["id"], "preview", expires)}),
        (base.replace(created["id"], "atc_000000000000ffffffffffffffff"), {"expires": expires, "signature": signature}),
    ]
    for url, params in cases:
        response = httpx.put(url, params=params, content=PNG, timeout=30)
        assert response.status_code == 403 and response.json()["detail"], (params, response.text)
    assert httpx.put(created["upload_descriptor"]["url"], content=PNG, timeout=30).status_code == 200
    preview = created["preview_url"]
    assert httpx.get(preview, timeout=30).status_code == 200
    assert httpx.get(preview.replace("/preview?", "/upload?"), timeout=30).status_code == 405
    assert httpx.put(preview.replace("/preview?", "/upload?"), content=PNG, timeout=30).status_code == 403


def test_another_users_attachment_cannot_be_used_seen_or_deleted(kit):
    alice, bob = Session(kit, "atc-owner"), Session(kit, "atc-other")
    mine = alice.upload("mine.png", PNG, "image/png")
    before = len(chat_requests(kit))
    for type_, params in [
        ("threads.create", {"input": user_input("steal", [mine["id"]])}),
        ("attachments.delete", {"attachment_id": mine["id"]}),
    ]:
        response = bob.post(type_, params)
        assert response.status_code == 404 and response.json()["detail"], response.text
    assert len(chat_requests(kit)) == before
    assert httpx.get(mine["preview_url"], timeout=30).content == PNG, "still there, still alice's"
    assert alice.post("attachments.delete", {"attachment_id": mine["id"]}).json() == {}
    assert httpx.get(mine["preview_url"], timeout=30).status_code == 403


@pytest.mark.parametrize("params,status", [
    ({"name": "a/b.png", "size": 10, "mime_type": "image/png"}, 400),
    ({"name": "a\\b.png", "size": 10, "mime_type": "image/png"}, 400),
    ({"name": "a\nb.png", "size": 10, "mime_type": "image/png"}, 400),
    ({"name": "..", "size": 10, "mime_type": "image/png"}, 400),
    ({"name": "", "size": 10, "mime_type": "image/png"}, 422),
    ({"name": "a.png", "size": 0, "mime_type": "image/png"}, 400),
    ({"name": "a.png", "size": -5, "mime_type": "image/png"}, 400),
    ({"name": "a.png", "size": MAX_BYTES + 1, "mime_type": "image/png"}, 413),
    ({"name": "a.svg", "size": 10, "mime_type": "image/svg+xml"}, 400),
    ({"name": "a.html", "size": 10, "mime_type": "text/html"}, 400),
    ({"name": "a.png", "size": "10", "mime_type": "image/png"}, 422),
    ({"name": "a.png", "size": 10}, 422),
    ({"size": 10, "mime_type": "image/png"}, 422),
    ({"name": "big.png", "size": USER_MAX_BYTES + 1, "mime_type": "image/png"}, 403),
])
def test_a_bad_attachment_is_refused_before_anything_is_stored(kit, params, status):
    alice = Session(kit, "atc-bad")
    stored = attachment_count(kit)
    response = alice.post("attachments.create", params)
    assert response.status_code == status and response.json()["detail"], response.text
    assert attachment_count(kit) == stored


def test_a_message_carries_only_uploaded_unused_attachments_within_its_count(kit):
    alice = Session(kit, "atc-message")
    waiting = alice.create("later.png", PNG, "image/png")
    ready = [alice.upload(f"{index}.txt", TEXT, "text/plain")["id"] for index in range(PER_MESSAGE + 1)]
    rows = kit.row_counts()
    before = len(chat_requests(kit))
    for attachments, status in [
        ([waiting["id"]], 400),
        (ready, 400),
        ([ready[0], ready[0]], 400),
        (["atc_000000000000ffffffffffffffff"], 404),
        ("atc_x", 422),
        ([5], 422),
    ]:
        response = alice.post("threads.create", {"input": user_input("hi", attachments)})
        assert response.status_code == status and response.json()["detail"], (attachments, response.text)
    assert kit.row_counts() == rows and len(chat_requests(kit)) == before
    alice.stream("threads.create", {"input": user_input("first", [ready[0]])})
    reused = alice.post("threads.create", {"input": user_input("again", [ready[0]])})
    assert reused.status_code == 400 and "another message" in reused.json()["detail"]


@pytest.mark.parametrize("files,status", [
    ({"file": ("empty.txt", b"", "text/plain")}, 400),
    ({"file": ("fake.png", b"GIF89a" + bytes(100), "image/png")}, 400),
    ({"file": ("bin.txt", b"\xff\xfe\x00", "text/plain")}, 400),
    ({"file": ("run.sh", b"#!/bin/sh\n", "application/x-sh")}, 400),
    ({"file": ("dir/a.txt", TEXT, "text/plain")}, 400),
    ({"other": ("a.txt", TEXT, "text/plain")}, 400),
])
def test_a_bad_direct_upload_is_refused_and_stores_nothing(kit, files, status):
    alice = Session(kit, "atc-direct")
    stored = attachment_count(kit)
    response = alice.http.post("/api/chatkit/attachments", files=files)
    assert response.status_code == status and response.json()["detail"], response.text
    assert attachment_count(kit) == stored


def test_a_direct_upload_needs_a_token_and_a_form(kit):
    no_token = httpx.post(f"{kit.base_url}/api/chatkit/attachments", files={"file": ("a.txt", TEXT, "text/plain")}, timeout=30)
    assert no_token.status_code == 401 and no_token.json()["detail"]
    raw = Session(kit, "atc-raw").http.post("/api/chatkit/attachments", content=TEXT, headers={"Content-Type": "text/plain"})
    assert raw.status_code == 400 and raw.json()["detail"]
    assert httpx.get(f"{kit.base_url}/api/chatkit/attachments/atc_x/other", timeout=30).status_code == 404


def test_uploads_over_the_limit_get_json_413_from_the_app_then_from_nginx(kit):
    alice = Session(kit, "atc-large")
    stored = attachment_count(kit)
    just_over = alice.direct("big.txt", b"a" * (MAX_BYTES + 1), "text/plain")
    assert just_over.status_code == 413 and just_over.json()["detail"]
    # The app's own answer (it names its limit): nginx let the body through to it.
    assert "bytes" in just_over.json()["detail"]
    far_over = alice.direct("huge.txt", b"a" * (12 << 20), "text/plain")
    assert far_over.status_code == 413 and far_over.headers["content-type"].startswith("application/json")
    assert far_over.json()["detail"]
    assert attachment_count(kit) == stored


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": data_url("image/png", JPEG)}},
    {"type": "image_url", "image_url": {"url": data_url("image/svg+xml", b"<svg/>")}},
    {"type": "file", "file": {"filename": "a/b.pdf", "file_data": data_url("application/pdf", PDF)}},
    {"type": "file", "file": {"filename": "empty.txt", "file_data": "data:text/plain;base64,"}},
])
def test_bad_parts_in_api_chat_are_refused_before_anything_is_stored(kit, part):
    headers = {"Authorization": f"Bearer {hs256_token('atc-chat-bad')}"}
    rows = kit.row_counts()
    before = len(chat_requests(kit))
    response = httpx.post(f"{kit.base_url}/api/chat", headers=headers, timeout=30,
                          json={"messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, part]}]})
    assert response.status_code == 400 and response.json()["detail"], response.text
    assert kit.row_counts() == rows and len(chat_requests(kit)) == before
