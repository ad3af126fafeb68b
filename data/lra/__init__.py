"""Long Range Arena: the seeded ListOps generator (listops.py) and loaders for LRA files (files.py)."""
from .files import load_image, load_listops, load_pathfinder, load_retrieval, load_text
from .listops import VOCAB as LISTOPS_VOCAB
from .listops import encode as encode_listops
from .listops import generate_listops

__all__ = [
    "LISTOPS_VOCAB", "encode_listops", "generate_listops",
    "load_image", "load_listops", "load_pathfinder", "load_retrieval", "load_text",
]
