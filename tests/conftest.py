"""pytest configuration shared by the tests."""


def pytest_report_header(config):
  """States in the header of every run which convolutions the CPU tests exercise (tests/test_onednn_conv.py)."""
  from lensjax.models import onednn
  return f"lensjax oneDNN convolutions: {'built and used on CPU' if onednn.available() else 'not used'}: " \
         f"{onednn.status()}"
