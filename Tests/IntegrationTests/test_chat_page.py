"""The chat page at "/" in a real browser (headless Chromium through Selenium), against the real
stack: nginx serves the page and forwards its /api/chatkit and /api/mcp calls to the responder,
which streams the mock model's answers. A screenshot of a finished conversation is kept in
.build/test-artifacts/ to look at."""

import os
import re
import time

import httpx
import pytest
from selenium import webdriver
from selenium.common.exceptions import NoAlertPresentException, StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from harness import REPO, Stack, hs256_token

ARTIFACTS = os.path.join(REPO, ".build", "test-artifacts")
# A message the page must show as text: as markup it would run its handler.
HOSTILE = '<img src=x onerror="window.__xss = 1; alert(1)"><script>window.__xss = 2</script>'


@pytest.fixture(scope="module")
def site(database_kind):
    # Chunks 40 ms apart: an answer takes several frames to arrive, as a real model's does.
    started = Stack(database=database_kind, mock_delay_ms=40)
    yield started
    started.stop()


@pytest.fixture
def browser():
    options = Options()
    options.binary_location = "/usr/bin/chromium"
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,860"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    yield driver
    driver.quit()


def open_page(browser, site, user):
    browser.get(f"{site.base_url}/#token={hs256_token(user, ttl=3600)}")
    wait(browser, lambda: browser.execute_script("return document.readyState") == "complete")


def wait(browser, condition, timeout=15):
    """Polls `condition` until it holds; the page rebuilds nodes as answers grow, and reloads for a new token."""
    return WebDriverWait(browser, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException, NoAlertPresentException)).until(lambda _: condition())


def dialog(browser):
    return WebDriverWait(browser, 5).until(expected_conditions.alert_is_present())


def send(browser, text):
    box = browser.find_element(By.ID, "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def answers(browser):
    """Read in one go: the page rebuilds an answer's nodes as it grows."""
    return browser.execute_script(
        'return [...document.querySelectorAll("#messages li[data-type=assistant_message] .body")].map((body) => body.innerText)')


def idle(browser):
    return not browser.find_element(By.ID, "stop").is_displayed() and browser.find_element(By.ID, "send").is_enabled()


def console_errors(browser):
    return [entry["message"] for entry in browser.get_log("browser") if entry["level"] == "SEVERE"]


def test_an_answer_streams_in_and_its_task_shows_beside_it(site, browser):
    open_page(browser, site, "page-alice")
    assert "token" not in browser.current_url, "the token leaves the address bar"
    # Send, then sample the answer once per frame until the stream ends.
    frames = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const seen = [];
        document.getElementById("input").value = "add buy milk";
        document.getElementById("composer").requestSubmit();
        const started = performance.now();
        function sample() {
          const body = document.querySelector("#messages li[data-type=assistant_message] .body");
          const text = body ? body.textContent : "";
          if (text && text !== seen[seen.length - 1]) seen.push(text);
          const streaming = !document.getElementById("stop").hidden;
          if ((streaming || seen.length === 0) && performance.now() - started < 15000) requestAnimationFrame(sample);
          else done(seen);
        }
        requestAnimationFrame(sample);
    """)
    assert re.fullmatch(r"Added task \d+: buy milk\.", frames[-1]), frames
    assert len(frames) >= 3, f"the answer arrived all at once: {frames}"
    assert all(later.startswith(earlier) for earlier, later in zip(frames, frames[1:])), frames
    wait(browser, lambda: "buy milk" in browser.find_element(By.ID, "tasks").text)
    assert browser.find_element(By.CSS_SELECTOR, "#messages li[data-type=workflow]").text, "the tool run is shown"
    wait(browser, lambda: browser.find_element(By.ID, "thread-title").text == "add buy milk")

    # After a reload the thread is in the list, and opening it shows the conversation again.
    browser.refresh()
    entry = wait(browser, lambda: next(iter(browser.find_elements(By.CSS_SELECTOR, "#thread-list button")), None))
    assert entry.text == "add buy milk"
    entry.click()
    wait(browser, lambda: len(answers(browser)) == 1)
    assert re.fullmatch(r"Added task \d+: buy milk\.", answers(browser)[0])
    assert browser.find_element(By.CSS_SELECTOR, "#messages li[data-type=user_message]").text == "add buy milk"

    send(browser, "list")
    wait(browser, lambda: len(answers(browser)) == 2 and idle(browser))
    assert "buy milk (pending)" in answers(browser)[1]
    browser.find_element(By.CSS_SELECTOR, "#messages li[data-type=assistant_message] .feedback button").click()
    wait(browser, lambda: browser.find_element(By.CSS_SELECTOR, ".feedback button").get_attribute("aria-pressed") == "true")
    os.makedirs(ARTIFACTS, exist_ok=True)
    browser.save_screenshot(os.path.join(ARTIFACTS, f"chat-page-{site.database_kind}.png"))
    browser.set_window_size(390, 844)
    assert browser.find_element(By.ID, "input").is_displayed() and browser.find_element(By.ID, "send").is_displayed()
    browser.save_screenshot(os.path.join(ARTIFACTS, f"chat-page-phone-{site.database_kind}.png"))
    assert console_errors(browser) == []


def test_stop_ends_the_answer_midway_and_the_part_shown_is_kept(site, browser):
    open_page(browser, site, "page-stop")
    send(browser, "slow 60")
    wait(browser, lambda: len((answers(browser) or [""])[0].split()) >= 5)
    browser.find_element(By.ID, "stop").click()
    wait(browser, lambda: idle(browser))
    shown = answers(browser)[0]
    assert browser.find_element(By.ID, "status").text == "Stopped."
    assert "w60" not in shown

    # The server keeps the part once it sees the client gone: reload until it is there.
    def reopened():
        browser.refresh()
        wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#thread-list button"))[0].click()
        time.sleep(0.3)
        return answers(browser)
    kept = wait(browser, reopened, timeout=20)[0]
    assert kept.startswith("w1 w2 w3 w4 w5") and "w60" not in kept, kept
    assert shown.startswith(kept) or kept.startswith(shown), (shown, kept)

    # The retry button answers the last message again, from the start.
    browser.find_element(By.ID, "retry").click()
    wait(browser, lambda: idle(browser) and answers(browser) and answers(browser)[0].endswith("w60"), timeout=20)
    assert len(answers(browser)) == 1


def test_the_thread_list_is_newest_first_and_pages_on(site, browser):
    token = hs256_token("page-many")
    for index in range(23):
        response = httpx.post(f"{site.base_url}/api/chatkit", timeout=30, headers={"Authorization": f"Bearer {token}"},
                              json={"type": "threads.create", "params": {"input": {
                                  "content": [{"type": "input_text", "text": f"chat {index}"}], "attachments": [],
                                  "inference_options": {}}}})
        assert response.status_code == 200
    open_page(browser, site, "page-many")

    def listed():
        return [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#thread-list button")]
    wait(browser, lambda: len(listed()) == 20)
    assert listed() == [f"chat {index}" for index in range(22, 2, -1)]
    browser.find_element(By.ID, "more-threads").click()
    wait(browser, lambda: len(listed()) == 23)
    assert listed()[20:] == ["chat 2", "chat 1", "chat 0"]
    assert not browser.find_element(By.ID, "more-threads").is_displayed()


def test_a_thread_is_renamed_and_deleted_from_the_page(site, browser):
    open_page(browser, site, "page-tidy")
    send(browser, "hello there")
    wait(browser, lambda: answers(browser) and idle(browser))
    wait(browser, lambda: browser.find_element(By.ID, "thread-title").text == "hello there")
    browser.find_element(By.ID, "rename-thread").click()
    prompt = dialog(browser)
    prompt.send_keys("Greetings")
    prompt.accept()
    wait(browser, lambda: browser.find_element(By.ID, "thread-title").text == "Greetings")
    assert [b.text for b in browser.find_elements(By.CSS_SELECTOR, "#thread-list button")] == ["Greetings"]
    browser.find_element(By.ID, "delete-thread").click()
    dialog(browser).accept()
    wait(browser, lambda: browser.find_elements(By.CSS_SELECTOR, "#thread-list button") == [])
    assert browser.find_element(By.ID, "thread-title").text == "New chat" and answers(browser) == []


def test_markup_in_a_message_is_shown_as_text_and_runs_nothing(site, browser):
    open_page(browser, site, "page-mallory")
    send(browser, HOSTILE)
    wait(browser, lambda: answers(browser) and idle(browser))
    assert browser.find_element(By.CSS_SELECTOR, "#messages li[data-type=user_message]").text == HOSTILE
    assert answers(browser)[0] == f"You said: {HOSTILE}"
    assert browser.find_elements(By.CSS_SELECTOR, "#messages img, #messages script") == []
    time.sleep(0.3)  # an onerror would have fired by now
    assert browser.execute_script("return window.__xss") is None
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text


def test_a_missing_wrong_or_expired_token_says_so(site, browser):
    browser.get(f"{site.base_url}/")
    notice = wait(browser, lambda: browser.find_element(By.ID, "notice") if browser.find_element(By.ID, "notice").is_displayed() else None)
    assert "needs a sign-in token" in notice.text and "#token=" in notice.text

    browser.get(f"{site.base_url}/#token=not.a.token")
    wait(browser, lambda: "did not accept your token" in browser.find_element(By.ID, "notice").text)
    assert not browser.find_element(By.ID, "send").is_enabled()

    browser.get(f"{site.base_url}/#token={hs256_token('page-late', now=time.time() - 7200, ttl=60)}")
    wait(browser, lambda: "expired" in browser.find_element(By.ID, "notice").text)


def test_the_page_is_served_with_a_strict_content_security_policy(site):
    page = httpx.get(f"{site.base_url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "'unsafe-inline'" not in policy
    script = httpx.get(f"{site.base_url}/chat-page/app.js", timeout=10)
    assert script.status_code == 200 and script.headers["content-type"].startswith("text/javascript")
    assert httpx.get(f"{site.base_url}/elsewhere", timeout=10).json() == {"detail": "not found"}
