from nexus_tui.app import main

main()
