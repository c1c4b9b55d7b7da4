"""CLIP and embedding: preprocessing, the encoder and its one factory, device choices, the embedding stage."""
