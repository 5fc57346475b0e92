from services.scorecard.app import main

main()
