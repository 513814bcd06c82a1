"""MediaPipe face-mesh annotator (controlnet_aux's ``mediapipe_face``); needs the optional ``mediapipe`` package."""
from .detector import MediapipeFaceDetector
from .landmarks import FaceMeshLandmarker, import_face_mesh
from .render import draw_face_mesh, render_faces

__all__ = ["FaceMeshLandmarker", "MediapipeFaceDetector", "draw_face_mesh", "import_face_mesh", "render_faces"]
