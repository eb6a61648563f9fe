from fmsweep.sweep.status import main

if __name__ == "__main__":
    main()
