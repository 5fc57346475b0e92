from services.identity_sync.app import main

main()
