from lightning_frozen.cli import main  # `python cli.py ...` is `lightning-frozen ...` (see `lightning-frozen --help`)

main()
