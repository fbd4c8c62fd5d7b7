"""Datasets: the Shapes story domain and real video-text folders."""
