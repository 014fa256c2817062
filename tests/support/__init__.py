"""What tests share: the stack's types and clients, builders of files and numbers, the batch
driver, and the checks of sends and deliveries. Test modules import from here, never from
each other; conftest.py keeps only the fixtures."""
