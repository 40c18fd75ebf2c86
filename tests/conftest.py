pytest_plugins = [
    "tests.fixtures.database",
    "tests.fixtures.app",
    "tests.fixtures.logs",
    "tests.fixtures.identity",
    "tests.fixtures.gateway",
    "tests.fixtures.fake_provider",
    "tests.fixtures.redis",
]
