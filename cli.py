"""`python cli.py ...`: keras_ddpm's command line, keras_ddpm/cli.py (installed: `keras-ddpm`)."""

from keras_ddpm.cli import main

if __name__ == "__main__":
    main()
