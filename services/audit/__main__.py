from services.audit.app import main

main()
