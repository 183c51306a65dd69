"""Small real corpora shipped inside the package, so the Quick start and the tests need no network.

Each folder holds xz-compressed files and a README with their source, license and attribution.
"""

from pathlib import Path

ROOT = Path(__file__).parent

# sha256 of each file once decompressed: the official releases, byte for byte.
CHECKSUMS = {
    "wikitext-2-raw/wiki.valid.raw.xz": "4cd0f6876d07a413aa911261ff6d363c72d757d47f0fdd6015702014c89cb9c7",
    "wikitext-2-raw/wiki.test.raw.xz": "173c87a53759e0201f33e0ccf978e510c2042d7f2cb78229d9a50d79b9e7dd08",
    "tinyshakespeare/input.txt.xz": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
}


def bundled(name: str) -> Path:
    """The folder of a bundled corpus (`wikitext-2-raw`, `tinyshakespeare`)."""
    return ROOT / name
