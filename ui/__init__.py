"""The web app's panels, one module each; `app.py` lays them out."""
