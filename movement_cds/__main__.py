from movement_cds._cli import main

main()
