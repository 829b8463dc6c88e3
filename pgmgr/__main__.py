from pgmgr.entry import main

main()
