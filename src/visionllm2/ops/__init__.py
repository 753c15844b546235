"""Pure tensor functions on boxes, masks and keypoints."""
