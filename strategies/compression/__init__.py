"""Update compression: pure codecs (:mod:`.codecs`), their use on Flower records
(:mod:`.records`) and the server-side decoding wrapper (:mod:`.strategy`)."""

from strategies.compression.codecs import SCHEMES, CompressionSpec, decode, encode
from strategies.compression.records import compress_train_content, decompress_content
from strategies.compression.strategy import CompressedUpdates

__all__ = [
    "SCHEMES",
    "CompressedUpdates",
    "CompressionSpec",
    "compress_train_content",
    "decode",
    "decompress_content",
    "encode",
]
