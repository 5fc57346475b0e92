from services.delegate.agent import main

main()
