"""`python -m cli …` is `meshfed …`."""

from cli.main import main

main()
