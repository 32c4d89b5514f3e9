# The sample IVR menu, a callmesh hook in awk: "press 1 for sales, 2 for billing".
#
# Run as `awk -f menu.awk` for each event of a call that arrived at its entry point. The event
# comes as JSON on stdin and as CALLMESH_* environment variables (read here); the answer is one
# JSON action per line on stdout. Exit 0; anything else, or silence for longer than the entry
# point's timeout, gets the entry point's fallback.
BEGIN {
    event = ENVIRON["CALLMESH_EVENT"]
    digits = ENVIRON["CALLMESH_DIGITS"]
    if (event == "arrived") {
        print "{\"action\": \"play\", \"prompt\": \"welcome\"}"
        print "{\"action\": \"collect\", \"max\": 1, \"timeout_s\": 8, \"prompt\": \"menu\"}"
    } else if (event == "digits" && ENVIRON["CALLMESH_STATE"] ~ /^(arriving|ivr)$/) {
        if (digits == "1") {
            choose("sales")
        } else if (digits == "2") {
            choose("billing")
        } else {
            if (digits != "" && digits != "0")
                print "{\"action\": \"play\", \"prompt\": \"invalid\"}"
            choose("support")
        }
    }
    # queued, offered, answered, ended: nothing to add (the node announces the position)
    exit 0
}

function choose(queue) {
    printf "{\"action\": \"set\", \"customer\": {\"menu_choice\": \"%s\"}}\n", queue
    print "{\"action\": \"play\", \"prompt\": \"connecting\"}"
    printf "{\"action\": \"queue\", \"queue\": \"%s\"}\n", queue
}
