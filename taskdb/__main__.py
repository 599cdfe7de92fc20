from taskdb.cli import main

main()
