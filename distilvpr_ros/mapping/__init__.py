"""Place database (faiss + metadata + schema) and the matcher that turns searches into place matches."""

from .database import KeyframeMeta, PlaceDatabase
from .errors import MapCompatibilityError, MapError
from .index import EmbeddingSpace, IndexConfig
from .matcher import Candidate, MatcherConfig, MatchResult, PlaceMatcher

__all__ = ["Candidate", "EmbeddingSpace", "IndexConfig", "KeyframeMeta", "MapCompatibilityError", "MapError",
           "MatchResult", "MatcherConfig", "PlaceDatabase", "PlaceMatcher"]
