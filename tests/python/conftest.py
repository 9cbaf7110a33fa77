"""Fixtures that run the real weir binary for the client integration tests.

When a test fails, the tail of the log of every broker it used is attached
to the failure report.
"""

import pytest

from weir_broker import BrokerFactory


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    report = yield
    if report.failed:
        for broker in getattr(item, "weir_brokers", []):
            report.sections.append(("weir broker log", broker.describe()))
    return report


@pytest.fixture
def start_broker(request, tmp_path_factory):
    """Start a broker with optional `settings` (Kafka config names to values)."""
    factory = BrokerFactory(tmp_path_factory, "weir")
    request.node.weir_brokers = factory.brokers
    yield factory
    factory.finish()


@pytest.fixture
def broker(start_broker):
    """A running two-shard broker with default settings."""
    return start_broker()
