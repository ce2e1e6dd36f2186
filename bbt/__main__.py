from bbt.cli import app

app(prog_name="bbt")
