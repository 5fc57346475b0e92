from services.plugin_proxy.app import main

main()
