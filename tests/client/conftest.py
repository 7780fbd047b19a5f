# The fake node and its fixtures live in fake_node.py so that tests/cli shares them.
from tests.client.fake_node import clean_env, csv_file, fake_node  # noqa: F401
