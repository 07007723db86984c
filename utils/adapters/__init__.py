"""The adapters: each is one way in or out (files and URLs, PACS over DICOMweb, the DICOM
result objects, Ray Data) that calls the core; the core never calls them."""
