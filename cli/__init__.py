"""meshfed's command line, the top floor: `meshfed` (cli.main) and `kubectl meshfed` (cli.kubectl).

Imports the runtime (federation) and the local fleet (fleet); imported by nothing.
"""
