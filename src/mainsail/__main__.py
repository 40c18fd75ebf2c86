from mainsail.cli import main

main()
