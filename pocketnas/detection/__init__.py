"""Faces in ordinary photos: MTCNN detection with five landmarks, and alignment onto the ArcFace template."""
from .mtcnn import MTCNN, Face, default_detector
from .photos import align_folder, align_photo, read_photo

__all__ = ["MTCNN", "Face", "align_folder", "align_photo", "default_detector", "read_photo"]
