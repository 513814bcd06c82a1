"""Anime line art: ControlNet 1.1's ``netG.pth`` U-Net."""
from .checkpoint import WEIGHT_FILE, load_lineart_anime_model
from .detector import LineartAnimeDetector
from .model import AnimeLineartConfig, AnimeLineartUNet

__all__ = ["AnimeLineartConfig", "AnimeLineartUNet", "LineartAnimeDetector", "WEIGHT_FILE", "load_lineart_anime_model"]
