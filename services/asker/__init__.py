"""The asker model server: writes the user's next turn of a conversation (Parrot-Ask).

``prompting`` holds the prompt formats (prompted, role-swapped) and the degeneracy checks;
``service`` holds ``AskerService`` (plain ``ask`` and the ``parrot.v1.Asker`` gRPC method).
"""
