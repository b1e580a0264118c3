from infoprompt.cli import main

main()
