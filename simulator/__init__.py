"""Synthetic, spectrally rendered photographs of a strip on the reference card (see `scene`)."""
from simulator.scene import (FAULTS, Glare, PadTruth, SceneSpec, Truth, card_homography, encode, photograph,
                             random_scene, render, write_scene)

__all__ = ["FAULTS", "Glare", "PadTruth", "SceneSpec", "Truth", "card_homography", "encode", "photograph", "random_scene",
           "render", "write_scene"]
