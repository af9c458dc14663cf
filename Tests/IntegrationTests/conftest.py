import httpx
import pytest

import harness
from harness import Stack, hs256_token


@pytest.fixture(scope="session", autouse=True, params=["sqlite", "postgres"])
def database_kind(request):
    """Every test runs once on each store. A fixture that starts a stack takes this one as an
    argument (so that it is started anew for each store); a stack a test starts itself uses it
    as its default."""
    harness.DATABASE = request.param
    yield request.param


@pytest.fixture(scope="module")
def stack(database_kind):
    started = Stack(database=database_kind)
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
