"""The ASAP method: vision-only projection, distiller and its training, 2-D map and cells, relevance maps."""
