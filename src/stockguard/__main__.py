from stockguard.cli import main

main()
