from zsagent.cli import main

main()
