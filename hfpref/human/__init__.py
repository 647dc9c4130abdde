"""Human annotation of selected pairs: hand them to people, take their labels back as preference rows.

``hfpref.human.labelstudio`` does it through a Label Studio server (the ``labelstudio`` extra installs the
server into its own environment; the client here is plain HTTP).
"""
