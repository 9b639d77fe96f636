"""DrawBench human evaluation (Imagen paper, Sec. 4.2): blinded rating sessions (pairs), a Streamlit rating app
(app), a vote store that loses nothing (votes), and clustered statistics (stats). Reads results only through
bench/store.py."""
