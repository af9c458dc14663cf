import httpx
import pytest

from harness import Stack, hs256_token


@pytest.fixture(scope="module")
def stack():
    started = Stack()
    yield started
    started.stop()


@pytest.fixture
def client(stack):
    with httpx.Client(base_url=stack.base_url, timeout=30) as http:
        yield http


@pytest.fixture
def alice():
    return {"Authorization": f"Bearer {hs256_token('alice')}"}


@pytest.fixture
def bob():
    return {"Authorization": f"Bearer {hs256_token('bob')}"}
