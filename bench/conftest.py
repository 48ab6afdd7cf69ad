"""pytest options of the microbenchmarks (bench/test_micro.py): ``--quick`` picks the smoke grid."""


def pytest_addoption(parser):
    parser.addoption("--quick", action="store_true", default=False,
                     help="bench/test_micro.py: one tiny block shape and one small model (a smoke run)")
