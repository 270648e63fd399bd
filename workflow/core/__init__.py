"""core: what every layer may use: atomic writes (io), exit statuses (exits). Torch-free."""
