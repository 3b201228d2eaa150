from fedmoe.cli import main

main()
