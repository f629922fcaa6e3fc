"""Procedural synthetic worlds with exact ground truth (``ep2p-loc sim``)."""
