from pgmgr.cli import main

main()
