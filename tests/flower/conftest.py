import sys
from pathlib import Path

# The helpers next to the tests (stack.py, fakegrid.py) are imported by name.
sys.path.insert(0, str(Path(__file__).parent))
